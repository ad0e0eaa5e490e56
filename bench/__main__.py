"""`python -m bench` (`make bench`): every benchmark under bench/, writing bench/results/*.csv."""
from bench import allocator, memory, rl, speed, step_profile

for module in (speed, memory, rl, allocator, step_profile):
    print(f"== {module.__name__} ==", flush=True)
    module.main([])
