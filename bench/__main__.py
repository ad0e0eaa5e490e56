"""`python -m bench` (`make bench`): every benchmark under bench/, writing bench/results/*.csv."""
import importlib
import sys

for name in ("bench.speed", "bench.memory"):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        continue
    print(f"== {name} ==", flush=True)
    module.main([])
sys.exit(0)
