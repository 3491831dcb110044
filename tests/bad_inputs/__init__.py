"""Bad-input tests: every case gives a clear message on the CLI and at the function/UI edge."""
