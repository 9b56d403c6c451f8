"""Experiment tools, apart from the library: the comparison of training methods (compare, report), the
estimators' comparison (estimators), prefix datasets for branched training (prefix_data), a vLLM server process
(vllm_server) and the reasoning testbed (testbed)."""
