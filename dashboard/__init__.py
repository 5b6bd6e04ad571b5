"""The Streamlit dashboard: pages over the read models (through read_models.queries only)."""
