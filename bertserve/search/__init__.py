"""Collections of texts and vectors over Faiss: ids, metadata, filters, deletes, crash-safe folders."""
from bertserve.search.cluster import KMeansResult, fit_pca, kmeans
from bertserve.search.collection import FORMAT_VERSION, Collection, Hit, Item
from bertserve.search.filters import FilterError, compile_filter
from bertserve.search.spec import IndexSpec, auto_factory

__all__ = ["Collection", "Hit", "Item", "IndexSpec", "auto_factory", "FilterError", "compile_filter",
           "KMeansResult", "kmeans", "fit_pca", "FORMAT_VERSION"]
