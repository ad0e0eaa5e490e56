"""`python -m bench` (`make bench`): every benchmark under bench/, writing bench/results/*.csv."""
from bench import memory, speed

for module in (speed, memory):
    print(f"== {module.__name__} ==", flush=True)
    module.main([])
