"""The base of every section of `cofre.settings.Settings`.

IN PCI SCOPE. Moved out of `cofre.settings` (with the sections, in `cofre._settings_*`)
to keep that module small; import the settings from `cofre.settings`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
