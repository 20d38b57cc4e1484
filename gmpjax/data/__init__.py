"""Data: the data-directory convention, the small datasets of the papers, and image pipelines."""

from gmpjax.data.levy import levy, levy_data
from gmpjax.data.paths import DataError, data_dir, require_file

__all__ = ["DataError", "data_dir", "levy", "levy_data", "require_file"]
