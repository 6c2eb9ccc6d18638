"""A small live plot of the training loss and validation F1, drawn with QPainter."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossPlot"]

LOSS_COLOUR = QColor(86, 180, 233)
F1_COLOUR = QColor(230, 159, 0)


class LossPlot(QWidget):
    """Training loss (left axis, log scale, smoothed) and validation F1 (right axis, 0–1)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.clear()

    def clear(self) -> None:
        self.loss: list[tuple[int, float]] = []
        self.f1: list[tuple[int, float]] = []
        self.update()

    def add(self, step: int, loss: float | None = None, f1: float | None = None) -> None:
        if loss is not None and math.isfinite(loss) and loss > 0:
            self.loss.append((step, loss))
        if f1 is not None and math.isfinite(f1):
            self.f1.append((step, f1))
        self.update()

    def _smoothed(self) -> list[tuple[int, float]]:
        out, ema = [], None
        for step, value in self.loss:
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            out.append((step, ema))
        return out

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        left, right, top, bottom = 42, 34, 8, 18
        pw, ph = max(w - left - right, 1), max(h - top - bottom, 1)
        p.setPen(QPen(QColor(120, 120, 120)))
        p.drawRect(left, top, pw, ph)
        steps = [s for s, _ in self.loss] + [s for s, _ in self.f1]
        if not steps:
            p.drawText(left + 8, top + ph // 2, "loss and validation F1 appear here")
            return
        s0, s1 = min(steps), max(max(steps), min(steps) + 1)

        def x_of(step: float) -> float:
            return left + (step - s0) / (s1 - s0) * pw

        smooth = self._smoothed()
        if smooth:
            values = [math.log10(v) for _, v in smooth]
            lo, hi = min(values), max(values)
            if hi - lo < 1e-6:
                lo, hi = lo - 0.5, hi + 0.5
            pts = QPolygonF([QPointF(x_of(s), top + (hi - math.log10(v)) / (hi - lo) * ph)
                             for s, v in smooth])
            p.setPen(QPen(LOSS_COLOUR, 1.6))
            p.drawPolyline(pts)
            p.drawText(2, top + 10, f"{10**hi:.3g}")
            p.drawText(2, top + ph, f"{10**lo:.3g}")
            p.drawText(left + 4, h - 4, "loss")
        if self.f1:
            pts = QPolygonF([QPointF(x_of(s), top + (1 - f) * ph) for s, f in self.f1])
            p.setPen(QPen(F1_COLOUR, 1.6))
            p.drawPolyline(pts)
            for point in pts:
                p.drawEllipse(point, 2.5, 2.5)
            p.drawText(left + pw + 4, top + 10, "1")
            p.drawText(left + pw + 4, top + ph, "0")
            best = max(f for _, f in self.f1)
            caption = f"validation F1 {self.f1[-1][1]:.2f} (best {best:.2f})"
            p.drawText(left + 44, h - 4, caption)
            used = left + 44 + p.fontMetrics().horizontalAdvance(caption) + 8
        else:
            used = left + 44
        step = f"step {s1}"
        width = p.fontMetrics().horizontalAdvance(step)
        if left + pw - width >= used:  # only where it does not cover the caption
            p.setPen(QPen(QColor(160, 160, 160)))
            p.drawText(left + pw - width, h - 4, step)
        p.setPen(Qt.PenStyle.NoPen)
