"""Execute the notebook headless over IPC sockets instead of TCP ports, once or again and again in one kernel.

With TCP, jupyter_client picks free ports by binding and releasing them, so two kernels started at the same time
(parallel runs on one machine) can end up on the same ports and wait for each other forever. Named sockets in
the working directory cannot collide."""
import re
from pathlib import Path

import nbformat
from jupyter_client import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

def with_form_values(notebook, values: dict):
    """A copy of the notebook whose form cell assigns other values, as a user editing the form would."""
    notebook = nbformat.from_dict(notebook)
    form = next(cell for cell in notebook.cells if cell.source.startswith("# @title Run parameters"))
    for name, value in values.items():
        form.source, count = re.subn(rf"^{name} = .*?(  # @param.*)$", rf"{name} = {value!r}\1", form.source,
                                     flags=re.MULTILINE)
        assert count == 1, f"{name} is not in the form"
    return notebook

def text_of(notebook) -> str:
    """Everything the cells printed, and the error of a failed cell."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                parts.append(output["text"])
            elif output.get("output_type") == "error":
                parts.append(f"{output['ename']}: {output['evalue']}\n")
    return "".join(parts)

class NotebookKernel:
    """One IPython kernel that runs the notebook again and again, as a Colab session does."""

    def __init__(self, notebook: Path, workdir: Path, env: dict, timeout: int = 600):
        self.notebook = nbformat.read(notebook, as_version=4)
        self.timeout = timeout
        # the sockets' path must be absolute: this process and the kernel work in different folders
        self.manager = KernelManager(kernel_name="python3", transport="ipc", ip=str(workdir / "kernel"))
        self.manager.start_kernel(cwd=str(workdir), env=env)

    def run_all(self, environ: dict | None = None, form: dict | None = None,
                probes: dict[str, str] | None = None) -> tuple[bool, str]:
        """Run every cell with these ELITE_* variables and form values; (finished, what it printed). `probes` maps
        the start of a cell's source to test code that runs right after that cell."""
        notebook = with_form_values(self.notebook, form or {})
        for start, code in (probes or {}).items():
            index = next(i for i, cell in enumerate(notebook.cells) if cell.source.startswith(start))
            notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(code))
        setup = ("import os\nfor _name in [name for name in os.environ if name.startswith('ELITE_')]:\n"
                 f"    del os.environ[_name]\nos.environ.update({environ or {}!r})")
        notebook.cells.insert(0, nbformat.v4.new_code_cell(setup))
        try:
            NotebookClient(notebook, km=self.manager, timeout=self.timeout).execute()
            return True, text_of(notebook)
        except CellExecutionError:
            return False, text_of(notebook)

    def evaluate(self, code: str) -> str:
        """Run a snippet in the kernel; what it printed."""
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
        NotebookClient(notebook, km=self.manager, timeout=self.timeout).execute()
        return text_of(notebook)

    def interrupt(self) -> None:
        """What Colab's Stop button does."""
        self.manager.interrupt_kernel()

    def shutdown(self) -> None:
        self.manager.shutdown_kernel(now=True)
