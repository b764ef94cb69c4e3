"""CareDesk benchmarks (not tests): `python -m bench [--quick]`, see bench/__main__.py."""
