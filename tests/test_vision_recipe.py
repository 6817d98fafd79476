"""The `vision` task kind: tasks from YAML entries (idx and image folders), and the recipe end to end."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import masllm.continual as recipe
from masllm.tasks import TASK_KINDS
from masllm.tasks.vision.kind import VisionTaskConfig, vision_sequence

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="../shared/data not present")


def _args(domains, model_config, seed=0, pretrained=None):
    return (
        SimpleNamespace(model_config=model_config, model_name_or_path=pretrained),
        SimpleNamespace(domains=domains),
        SimpleNamespace(seed=seed),
    )


@needs_data
def test_idx_tasks_split_permuted_and_importance_sources():
    mnist = str(DATA / "mnist")
    domains = [
        {"name": "a", "source": mnist, "classes": [3, 5], "max_train": 50, "importance": "test",
         "importance_classes": [1], "max_importance": 20},
        {"name": "b", "source": mnist, "permutation_seed": 4, "head": 1, "max_train": 30, "max_eval": 40},
    ]  # fmt: skip
    seq = vision_sequence(*_args(domains, {"backbone": "mlp", "hidden_sizes": [8]}))
    a, b = seq.tasks
    assert len(a.train_dataset) == 50 and set(a.train_dataset.y.tolist()) == {0, 1}
    assert len(a.importance_dataset) == 20 and a.importance_dataset.y is None
    from masllm.tasks.vision.mnist import load_idx_dataset, to_float

    raw = load_idx_dataset(mnist)
    fives = to_float(raw["test_images"][raw["test_labels"] == 5][:20])
    assert torch.equal(a.importance_dataset.x, fives)  # class 1 of task (3, 5) = digit 5, from the test set
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(4))
    assert torch.equal(b.eval_dataset.x, to_float(raw["test_images"][:40])[:, perm])
    model = seq.model_init(None)
    assert [h.out_features for h in model.heads.values()] == [2, 10]
    assert b.train_dataset[0]["task_ids"] == 1


def test_bad_task_entries():
    with pytest.raises(ValueError, match="Unknown vision task fields"):
        VisionTaskConfig.from_dict({"name": "x", "source": "y", "clases": [1]})
    with pytest.raises(ValueError, match="importance"):
        VisionTaskConfig(name="x", source="y", importance="val")


def _image_folder(root: Path, classes=("cat", "dog"), per_class=3) -> Path:
    from PIL import Image

    g = np.random.default_rng(0)
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = (g.random((10, 12, 3)) * 60 + 100 * c).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def test_image_folder_task_resizes_normalises_and_trains_heads(tmp_path):
    folder = _image_folder(tmp_path / "pets")
    domains = [{"name": "pets", "source": str(folder), "format": "imagefolder", "importance_classes": [1]}]
    config = {"backbone": "resnet", "image_size": 16, "num_channels": 3, "embedding_size": 4,
              "hidden_sizes": [4, 8], "depths": [1, 1], "layer_type": "basic"}  # fmt: skip
    seq = vision_sequence(*_args(domains, config))
    task = seq.tasks[0]
    item = task.train_dataset[4]
    assert item["pixel_values"].shape == (3, 16, 16) and int(item["labels"]) == 1
    assert len(task.importance_dataset) == 3 and "labels" not in task.importance_dataset[0]  # dog images only
    from PIL import Image

    with Image.open(folder / "train" / "dog" / "1.png") as im:
        ref = np.asarray(im.convert("RGB").resize((16, 16), Image.BILINEAR), dtype=np.float32) / 255
    expected = (
        torch.from_numpy(ref).permute(2, 0, 1) - torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    ) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(item["pixel_values"], expected)
    model = seq.model_init(None)
    batch = seq.tasks[0].data_collator([task.train_dataset[i] for i in range(6)])
    assert model(**batch).logits.shape == (6, 2)


@needs_data
@pytest.mark.skipif("vision" not in TASK_KINDS, reason="the vision kind is not registered in masllm.tasks")
def test_split_mnist_recipe_end_to_end(tmp_path):
    """recipes/configs/split_mnist.yaml, shrunk: 2 tasks, finetune and MAS, rows of R = accuracies that
    a plain loop over the saved models reproduces."""
    config = yaml.safe_load((ROOT / "recipes" / "configs" / "split_mnist.yaml").read_text())
    domains = [dict(d, max_train=256, max_eval=200, max_importance=64) for d in config["domains"][:2]]
    for d in domains:
        d["source"] = str(DATA / "mnist")
        d.pop("checksums", None)
    argv = ["--config", str(ROOT / "recipes" / "configs" / "split_mnist.yaml"), "--output_dir", str(tmp_path),
            "--domains", yaml.safe_dump(domains, default_flow_style=True), "--model_config",
            "{backbone: mlp, in_features: 784, hidden_sizes: [32]}", "--num_train_epochs", "1",
            "--per_device_train_batch_size", "32", "--save_strategy", "no", "--plots", "false",
            "--disable_tqdm", "true"]  # fmt: skip
    report = recipe.main(argv)
    R = report["runs"]["mas"]["R"]["accuracy"]
    assert len(R) == 2 and R[0][0] > 90 and R[1][1] > 80
    from safetensors.torch import load_file

    from masllm.tasks.vision import accuracy

    seq = vision_sequence(*_args(domains, {"backbone": "mlp", "in_features": 784, "hidden_sizes": [32]}))
    model = seq.model_init(None)
    model.load_state_dict(load_file(str(tmp_path / "mas" / "1-2-3" / "model.safetensors")))
    for j, task in enumerate(seq.tasks):
        ds = task.eval_dataset
        assert abs(accuracy(model, ds.x, ds.y, ds.head) - R[1][j]) < 1e-6
