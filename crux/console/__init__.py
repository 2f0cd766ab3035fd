"""The plant console: a read-only web page over lines, models, datasets, stations and captures.

`crux.console.app.create_console_app` builds the FastAPI app from data readers (`crux.console.sources`); nothing
here reads params.yaml or the environment (that is `crux.console.cli`). Heavy modules load only when used.
"""
