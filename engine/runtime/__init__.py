"""The runtime: the two worker threads, the scheduler that runs one batched step at a time, row placement, prediction
admission, memory sizing."""
