"""The package version, in a module of its own so that any layer can read it without importing the
package's top level (which re-exports the library API)."""

__version__ = "0.1.0"
