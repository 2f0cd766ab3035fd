"""The improvement cycle: its steps as plain functions, and the Label Studio webhook receiver that starts it."""
