"""Export the current filter: download the keep-list or its spec, or save both into the run.

Every path goes through the code of ``mimic-explorer export`` (``filters.rules.apply_rule``, the
streamed keep-list of ``store/keep_list_stream.py``, ``store/filter_files.save_to_run``), so what the
page hands out is what the command line would write.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import tempfile
from pathlib import Path

import panel as pn
from panel.viewable import Viewer

from mimic_explorer.filters.formats import FORMATS, check_uids
from mimic_explorer.filters.reviews import AppliedReviews, apply_reviews
from mimic_explorer.filters.rules import FilterError, FilterResult
from mimic_explorer.filters.spec import build_spec
from mimic_explorer.store.filter_files import save_to_run
from mimic_explorer.store.keep_list_stream import write_keep_list
from mimic_explorer.store.reader import Run
from mimic_explorer.store.reviews import ReviewError, applied_now
from mimic_explorer.ui.filter_model import FilterModel
from mimic_explorer.ui.notice import Notice
from mimic_explorer.ui.state import ExplorerState


class ExportPanel(Viewer):
    """Format, "Download spec", "Download keep-list" and "Save to run" for ``model``'s rule on ``run``."""

    def __init__(self, run: Run, state: ExplorerState, model: FilterModel, notice: Notice, **params):
        super().__init__(**params)
        self.run, self.state, self.model, self.notice = run, state, model, notice
        wide = dict(sizing_mode="stretch_width")
        self.format = pn.widgets.Select(label="Keep-list format", options=list(FORMATS), value="csv", width=110)
        self.download = pn.widgets.FileDownload(
            callback=self.keep_list_file,
            filename=pn.bind(lambda fmt: f"keep-list-{run.run_id}.{fmt}", self.format),
            label="Download keep-list",
            color="primary",
            **wide,
        )
        self.download_spec = pn.widgets.FileDownload(
            callback=self.spec_file,
            filename=f"keep-list-{run.run_id}.spec.json",
            label="Download spec",
            color="light",
            **wide,
        )
        self.save = pn.widgets.Button(
            label="Save to run",
            color="success",
            **wide,
            description="Write the keep-list and its spec into the run's filters/ folder",
        )
        self.save.on_click(self._on_save)
        self.format.param.watch(self._on_format, "value")
        self._layout = pn.Column(pn.Row(self.format, self.download_spec, **wide), self.download, self.save, **wide)

    def _on_format(self, event) -> None:
        """``uids`` needs DataComp uids as sample ids: say so at once (and go back) rather than fail the download."""
        if event.new != "uids":
            return
        try:
            check_uids(self.state.samples["sample_id"].to_numpy())
        except FilterError as exc:
            self.notice.show(f"Keep-list format uids is not possible here: {exc}", "warning")
            self.format.value = event.old

    def reviews(self) -> AppliedReviews | None:
        """The run's review decisions (latest per sample), applied to every export of the page; None when there are
        none (or the log cannot be read: said as a notice)."""
        try:
            found = applied_now(self.run.layout)
        except ReviewError as exc:
            self.notice.show(f"Review decisions not applied: {exc}", "warning")
            return None
        return found if found.rows else None

    def _result(self) -> FilterResult:
        result = self.state.apply(self.model.to_rule())
        reviews = self.reviews()
        return result if reviews is None else apply_reviews(self.state.samples, result, reviews)

    def keep_list_file(self) -> io.BytesIO:
        """The keep-list of the current rule, in the chosen format."""
        with tempfile.TemporaryDirectory(prefix="keep-list-") as folder:
            return io.BytesIO(self.write_keep_list(Path(folder) / f"keep-list.{self.format.value}").read_bytes())

    def write_keep_list(self, out: Path) -> Path:
        """Write the keep-list to ``out``, streamed from the run's index (never the whole table in memory)."""
        return write_keep_list(self.state.samples, self._result(), self.model.column, self.format.value, out)

    def spec_file(self) -> io.BytesIO:
        """The spec of the current rule (what ``filters.spec.build_spec`` writes beside an export)."""
        reviews = self.reviews()
        spec = build_spec(
            self.run.meta,
            self.model.to_rule(),
            self._result(),
            self.format.value,
            None if reviews is None else reviews.facts(),
        )
        return io.BytesIO(json.dumps(spec, indent=1, sort_keys=True).encode())

    def save_to_run(self, export_format: str = "csv"):
        """Write keep-list + spec into ``RUN/filters/`` (restored when the run is opened again)."""
        return save_to_run(
            self.run.path,
            self.state.samples,
            self.run.meta,
            self.model.to_rule(),
            export_format,
            reviews=self.reviews(),
        )

    def _on_save(self, event=None) -> None:
        try:
            result, _, out, spec_path = self.save_to_run(self.format.value)
        except (FilterError, OSError) as exc:
            self.notice.show(f"Not saved: {exc}", "danger")
            return
        when = _dt.datetime.now().strftime("%H:%M:%S")
        self.notice.show(
            f"Saved {result.kept} of {result.total} to `{out}` and its spec (`{spec_path.name}`) at {when}; "
            "this filter is restored when the run is opened again.",
            "success",
        )

    def __panel__(self):
        return self._layout
