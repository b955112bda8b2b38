"""auditgap: find and fix kernel-side syscall stalls across a Linux fleet (CLI package)."""

__version__ = '0.1.0'
