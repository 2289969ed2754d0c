"""Two ways to time a short CUDA call, shared by the benchmarks.

per_call_ms: CUDA events around each call, median of many: what a loop such as generate() sees, including
gaps while the host prepares the launches. graph_ms: the same call captured CALLS times in one CUDA graph and
replayed: the GPU's time alone, as under torch.compile(mode="reduce-overhead") or a serving engine's graphs.
"""
import statistics

import torch

CALLS = 20


def per_call_ms(fn, reps=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_ms(fn, reps=20):
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # compile and allocate outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    return per_call_ms(graph.replay, reps) / CALLS
