"""``python -m fsmis.data.adapters``: the registered datasets, one line each (name,
source kind, modality, test classes), read from the registry and the adapters' FACTS,
so the config schema need not repeat them."""

from __future__ import annotations

from fsmis.data.adapters import DATASETS, get


def main() -> None:
    for name in DATASETS:
        facts = get(name).FACTS
        classes = ", ".join(facts.classes) if facts.classes else "from the config"
        print(f"{name:<14} {facts.source['kind']:<10} {facts.modality or 'config':<7} {classes}")


if __name__ == "__main__":
    main()
