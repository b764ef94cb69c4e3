"""A local SMART on FHIR R4 EHR for development, demos, tests and benchmarks.

It is the other side of the protocol and shares no code with the product packages.
"""
