"""Base classes of every kind's Spec and Status models: records keep plain JSON, code reads and writes it only
through these (so a field's name, type and default are stated once, and mypy checks every use)."""

from __future__ import annotations

__all__ = ["Spec", "Status"]

from typing import Any, Self

from pydantic import BaseModel, ConfigDict

from cloudlet.core.records import Resource


class _Model(BaseModel):
    # records written by an older version may carry fields this one dropped: they are ignored, never fatal
    model_config = ConfigDict(extra="ignore")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Spec(_Model):
    @classmethod
    def of(cls, res: Resource) -> Self:
        return cls.model_validate(res.spec)


class Status(_Model):
    @classmethod
    def of(cls, res: Resource) -> Self:
        return cls.model_validate(res.status)
