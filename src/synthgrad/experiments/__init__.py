"""The paper's experiments, each one command: the demo and the reproduction suites, each writing a report."""
