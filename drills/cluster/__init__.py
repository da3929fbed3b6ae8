"""The cluster drill: Airflow on Celery (PostgreSQL, Redis), two workers without a shared disk, two
triggerers, S3 on moto. Run it with ``make drill-cluster`` or ``python -m drills.cluster``."""
