"""Fault-injection tests: killed processes, broken servers, full disks (each bounded in time)."""
