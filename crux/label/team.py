"""Team settings the open-source Label Studio has: overlap (several annotators per task), the import identity,
and the check that a project still is what params.yaml declares (`crux project sync --check`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crux.errors import CruxError

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

    from crux.config import ProjectSpec


class TeamError(CruxError, RuntimeError):
    """Label Studio refused a team setting, or a project differs from params.yaml."""


def ensure_member(client: LabelStudio, email: str, first_name: str = "") -> int:
    """The id of the organisation member `email`, created (without a password: never a login) when missing."""
    for user in client.users.list():
        if (user.email or "").lower() == email.lower():
            return int(user.id)
    try:
        user = client.users.create(email=email, username=email, first_name=first_name)
    except Exception as exc:  # the SDK raises ApiError subclasses per status code
        raise TeamError(f"Label Studio refused to create the member {email}: {exc}") from exc
    return int(user.id)


def overlap_settings(spec: ProjectSpec) -> dict[str, int]:
    """Label Studio Community's own overlap fields for a project: its task queue hands each overlapped task to
    `annotators` different people; `share` of the tasks are overlapped (the rest get one annotation)."""
    return {
        "maximum_annotations": spec.overlap.annotators,
        "overlap_cohort_percentage": round(100 * spec.overlap.share),
    }


@dataclass(frozen=True)
class Difference:
    field: str
    in_label_studio: Any
    in_params: Any


def _norm(value: Any) -> Any:
    # Label Studio trims surrounding whitespace of what it stores.
    return value.strip() if isinstance(value, str) else value


def project_differences(existing: Any, wanted: Mapping[str, Any]) -> list[Difference]:
    """Fields of a Label Studio project that differ from what params.yaml wants, in `wanted`'s order."""
    found = []
    for key, value in wanted.items():
        have = getattr(existing, key, None)
        if isinstance(value, str):
            have = have or ""
        if _norm(have) != _norm(value):
            found.append(Difference(key, have, value))
    return found


def differences_to_text(name: str, project_id: int, differences: list[Difference]) -> str:
    """A readable account of what was changed in the UI (a unified diff for the label config)."""
    import difflib

    lines = [f"{name} (Label Studio project {project_id}) differs from params.yaml:"]
    for d in differences:
        if isinstance(d.in_params, str) and ("\n" in d.in_params or "\n" in str(d.in_label_studio or "")):
            diff = difflib.unified_diff(
                str(d.in_label_studio or "").strip().splitlines(),
                d.in_params.strip().splitlines(),
                fromfile=f"{d.field} in Label Studio",
                tofile=f"{d.field} from params.yaml",
                lineterm="",
            )
            lines.append(f"  {d.field}:")
            lines.extend(f"    {line}" for line in diff)
        else:
            lines.append(f"  {d.field}: Label Studio has {d.in_label_studio!r}, params.yaml says {d.in_params!r}")
    return "\n".join(lines)
