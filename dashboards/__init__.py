"""The Streamlit results dashboard, started by ``attune dashboard``.

``app.py`` is the router (``st.navigation`` over the pages in ``app_pages/``); every page reads its
data through :mod:`dashboards.sources` (Streamlit's caches, the configured ``cache_ttl_s``) from
the pure loaders of :mod:`dashboards.data` and :mod:`dashboards.delta`, which know nothing of
Streamlit and are tested on their own. The dashboard holds no business logic: it shows what the
batch layer, the model repository, the speed layer and the servers have already computed, and
it never starts Spark.
"""
