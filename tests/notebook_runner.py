"""Execute a notebook headless, like `jupyter execute`, but over IPC sockets instead of TCP ports.

With TCP, jupyter_client picks free ports by binding and releasing them, so two kernels started at the same time
(parallel runs on one machine) can end up on the same ports and wait for each other forever. Named sockets in
the working directory cannot collide. Usage: python notebook_runner.py NOTEBOOK [TIMEOUT_SECONDS]"""
import sys

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient


def run(path: str, timeout: int) -> None:
    notebook = nbformat.read(path, as_version=4)
    kernel = KernelManager(kernel_name="python3", transport="ipc")
    try:
        NotebookClient(notebook, km=kernel, timeout=timeout).execute()
    finally:
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=True)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 600)
