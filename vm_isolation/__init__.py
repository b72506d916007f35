"""vm-isolation: run Apache Mesos tasks inside KVM/QEMU guests forked from a base image."""

__version__ = "0.1.0"
