"""The Streamlit app. It calls ``vitsearch.app`` only (with its records, errors and config):
no SQL, no FAISS, no torch here."""
