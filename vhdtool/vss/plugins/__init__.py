"""vhdtool's own hypervisor plugins, registered by entry point like any third party's."""
