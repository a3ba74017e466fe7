"""The release of sitepeek: a leaf, so any module can name it without importing the
package's lazy public API (and the import graph stays acyclic)."""

__version__ = "0.1.0"
