"""What a task is, as configuration: a view (dataset + optional label subset) over a dataset."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder")


class TaskConfig(BaseModel):
    """One task of the interleave. ``classes`` selects a label subset (relabelled 0..n-1 in that order)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    dataset: Literal["digits", "cifar10", "cifar100", "imagefolder"]
    root: str | None = None
    classes: list[int] | None = None
    download: bool = False

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        # each message starts with the key it is about: the params formatter turns that into the full path
        # (search.tasks[0].classes: ...)
        if self.dataset in ("cifar10", "cifar100", "imagefolder") and not self.root:
            raise ValueError(f"root: task {self.name!r}: dataset {self.dataset!r} needs 'root' (a directory)")
        if self.classes is not None:
            if not self.classes:
                raise ValueError(f"classes: task {self.name!r}: 'classes' must be non-empty or null")
            if len(set(self.classes)) != len(self.classes) or min(self.classes) < 0:
                raise ValueError(f"classes: task {self.name!r}: 'classes' must be distinct non-negative labels")
        return self


def default_digits_tasks() -> list[TaskConfig]:
    """The embedded default: scikit-learn's digits as a Split-MNIST-style interleave (0-4, then 5-9)."""
    return [
        TaskConfig(name="digits_0_4", dataset="digits", classes=[0, 1, 2, 3, 4]),
        TaskConfig(name="digits_5_9", dataset="digits", classes=[5, 6, 7, 8, 9]),
    ]
