"""Test-only callback: records which episodes a ``fsseg test`` run evaluated (one JSON-lines file per rank)."""

import json
import os

import lightning as L


class RecordTestEpisodes(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            for i, idx in enumerate(batch["episode_index"].tolist()):
                f.write(json.dumps({"episode_index": idx, "query": os.path.basename(batch["query_name"][i]),
                                    "supports": [os.path.basename(s) for s in batch["support_names"][i]],
                                    "class_id": int(batch["class_id"][i])}) + "\n")
