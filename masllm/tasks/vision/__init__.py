"""The `vision` task kind and its pieces: multi-head models (`models`), MNIST-format data and the
Split / Permuted MNIST benchmarks (`mnist`), task datasets (`data`), the recipe's kind (`kind`) and
the lean tensor loop the benchmarks use (`loop`)."""

from .data import TaskDataset, batches, validation_split
from .loop import accuracy, train_task
from .mnist import TaskData, load_idx_dataset, permuted_tasks, split_tasks
from .models import MultiHeadClassifier, build_backbone

__all__ = [
    "MultiHeadClassifier",
    "TaskData",
    "TaskDataset",
    "accuracy",
    "batches",
    "build_backbone",
    "load_idx_dataset",
    "permuted_tasks",
    "split_tasks",
    "train_task",
    "validation_split",
]
