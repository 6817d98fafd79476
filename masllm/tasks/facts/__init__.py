"""The `facts` task kind: fact learning with an embedding head (MAS paper, Sec. 5.2, Table 4, Fig. 7).

- `data`: <digit, relation, item> scenes from real MNIST / Fashion-MNIST images (400 facts), seeded,
  cached; the disjoint fact groups of the tasks (`fact_groups`);
- `embeddings`: the units' language embeddings (all-MiniLM-L6-v2), cached; the facts' targets;
- `model`: `FactEmbeddingModel` (backbone + S, P, O heads, output [S | P | O]) and `fact_loss`;
- `metrics`: fact-to-image retrieval MAP; `tasks`: the tasks as tensors and their MAP;
- `kind`: the recipe's `facts` kind.
"""

from .data import DIGITS, ITEMS, RELATIONS, FactsData, FactsSpec, all_facts, fact_groups, load_facts
from .embeddings import fact_embeddings, unit_embeddings
from .metrics import average_precisions, retrieval_map
from .model import FactEmbeddingModel, fact_loss
from .tasks import FactTask, embed_all, make_tasks, overall_map, task_map

__all__ = [
    "DIGITS",
    "ITEMS",
    "RELATIONS",
    "FactEmbeddingModel",
    "FactTask",
    "FactsData",
    "FactsSpec",
    "all_facts",
    "average_precisions",
    "embed_all",
    "fact_embeddings",
    "fact_groups",
    "fact_loss",
    "load_facts",
    "make_tasks",
    "overall_map",
    "retrieval_map",
    "task_map",
    "unit_embeddings",
]
