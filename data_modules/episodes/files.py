"""Episode lists as JSON files, in the schema of ``../shared/protocol/golden/*.json``:

``{"benchmark", "protocol", "split", "fold", "shot", "seed", "eval_seeds", "n_episodes",
"episodes": [{"query", "supports", "class_id", "class_name", "seed_index"}, ...]}`` in evaluation
order. Names are the sample keys, spelled as in the split lists (VOC ids, the COCO pools' paths,
``<category>/<n>.jpg``); class ids are 0-based (FSS-1000: 760 + sorted index for the test classes).
N-way episodes write ``supports`` as one list per way and ``class_id`` as a list.
"""

from __future__ import annotations

import json
from typing import Dict, List, Sequence, Tuple

from ..benchmarks.benchmark import BENCHMARKS
from ..readers.base import FewShotDataset
from .draw import Episode


def episodes_to_json(episodes: Sequence[Episode], dataset: FewShotDataset, header: Dict) -> Dict:
    rows = []
    for ep in episodes:
        one_way = len(ep.class_ids) == 1
        rows.append({
            "query": ep.query,
            "supports": list(ep.supports[0]) if one_way else [list(s) for s in ep.supports],
            "class_id": ep.class_ids[0] if one_way else list(ep.class_ids),
            "class_name": (dataset.class_names.get(ep.class_ids[0], str(ep.class_ids[0])) if one_way
                           else [dataset.class_names.get(c, str(c)) for c in ep.class_ids]),
            "seed_index": ep.seed_index,
        })
    return {**header, "n_episodes": len(rows), "episodes": rows}


def read_episodes_file(path: str, dataset: FewShotDataset) -> Tuple[List[Episode], List[int]]:
    """(episodes, evaluation seeds) of a JSON episode file, every name and class checked against
    ``dataset`` (a clear error naming the file and the entry otherwise). Opens no image."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"episodes file {path!r}: cannot read it as JSON ({e})") from e
    rows = data.get("episodes") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"episodes file {path!r}: expected {{'episodes': [{{'query', 'supports', 'class_id'}}, ...]}}")
    known = set(getattr(dataset, "records", {})) | {k for ks in dataset.samples_by_class.values() for k in ks}
    episodes = []
    for i, row in enumerate(rows):
        try:
            query, supports, class_id = row["query"], row["supports"], row["class_id"]
        except (KeyError, TypeError):
            raise ValueError(f"episodes file {path!r}: episode {i} lacks query/supports/class_id") from None
        if isinstance(class_id, int):
            supports, class_ids = [supports], [class_id]
        else:
            class_ids = list(class_id)
        for name in [query, *(s for way in supports for s in way)]:
            if name not in known:
                raise ValueError(f"episodes file {path!r}: episode {i} names {name!r}, which is not a sample of "
                                 f"{dataset!r} (names must be spelled as in the split lists)")
        for c in class_ids:
            if c not in dataset.class_names:
                raise ValueError(f"episodes file {path!r}: episode {i} has class id {c}, unknown to {dataset!r}")
        episodes.append(Episode(query, tuple(tuple(way) for way in supports), tuple(int(c) for c in class_ids),
                                int(row.get("seed_index", 0))))
    seeds = data.get("eval_seeds") or [data.get("seed", 0)]
    return episodes, [int(s) for s in seeds]


def _benchmark(name):
    """The registered benchmark a header names (the reference files use HSNet's names "pascal",
    "coco", "fss", registered as aliases), or None for a name no benchmark has."""
    return BENCHMARKS.get(name) if name is not None and name in BENCHMARKS else None


def check_episodes_header(path: str, episodes: Sequence[Episode], benchmark: str, fold: int, shots: int) -> None:
    """Refuse an episode file written for another benchmark, fold or shot count than the data config
    (its header, and the supports of its episodes): evaluated anyway, the run would be labelled with
    the config's fold and shots."""
    with open(path) as f:
        data = json.load(f)
    bench = data.get("benchmark")
    theirs = _benchmark(bench)
    named = BENCHMARKS.canonical(bench) if theirs is not None else bench
    have = {"benchmark": named, "fold": data.get("fold"), "shots": data.get("shot")}
    if theirs is not None and not theirs.has_folds:
        have["fold"] = None  # one class split (FSS-1000): fold does not apply
    k = {len(way) for ep in episodes for way in ep.supports}
    if have["shots"] is None and len(k) == 1:
        have["shots"] = k.pop()
    want = {"benchmark": benchmark, "fold": fold, "shots": shots}
    same = {"benchmark": bench is None or bench == benchmark or
            (theirs is not None and theirs is _benchmark(benchmark))}
    wrong = [key for key in want if have[key] is not None and not same.get(key, have[key] == want[key])]
    if wrong:
        raise ValueError(
            f"episodes file {path!r} is for {', '.join(f'{key} {have[key]}' for key in wrong)} but the data config "
            f"says {', '.join(f'{key} {want[key]}' for key in wrong)}: set --data.init_args."
            f"{'dataset' if wrong[0] == 'benchmark' else wrong[0]} to match, or --data.init_args.force_episodes_file "
            "true to evaluate it anyway")
