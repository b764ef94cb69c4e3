"""A local SMART on FHIR R4 EHR for development, demos, tests and benchmarks. Shares no code with the product."""
