"""The help-desk store: the data CareDesk owns and the rules on its rows.

Beneath both the web app (``plugin``) and the jobs (``jobs``), above the leaf packages
(``smart_launch``, ``fhir_mappers``): SQLAlchemy models and Alembic migrations, sessions,
encryption at rest, EHR registrations and their token storage, the shared Redis
connection, and the services that own the rules on rows (tickets, tasks, surveys, audit).
It imports neither ``plugin`` nor ``jobs`` (an import-linter contract checks it).
"""
