"""A small live plot of training loss and validation mean IoU (QPainter; no plotting library)."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor("#f0a030")
IOU_COLOR = QColor("#40c0f0")


class LivePlot(QWidget):
    """Loss per step (left axis, auto range) and validation mean IoU per epoch (right, 0..1)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("live_plot")
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.loss: list[tuple[float, float]] = []
        self.iou: list[tuple[float, float]] = []

    def clear(self) -> None:
        self.loss.clear()
        self.iou.clear()
        self.update()

    def add_loss(self, step: float, loss: float) -> None:
        if loss is not None and math.isfinite(loss):
            self.loss.append((float(step), float(loss)))
            self.update()

    def add_iou(self, step: float, iou: float) -> None:
        if iou is not None and math.isfinite(iou):
            self.iou.append((float(step), float(iou)))
            self.update()

    def best_iou(self) -> float | None:
        """The best validation mean IoU so far (that of the model training keeps)."""
        return max((v for _, v in self.iou), default=None)

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        left, right, top, bottom = 40, 36, 18, 18
        area = QRectF(left, top, max(1, w - left - right), max(1, h - top - bottom))
        text = self.palette().windowText().color()
        p.setPen(QPen(text, 1))
        p.drawRect(area)
        xs = [s for s, _ in self.loss] + [s for s, _ in self.iou]
        x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if x1 <= x0:
            x1 = x0 + 1
        losses = [v for _, v in self.loss]
        lmax = max(losses) * 1.05 if losses else 1.0
        lmin = 0.0

        def pt(x: float, y: float, y0: float, y1: float) -> QPointF:
            fx = (x - x0) / (x1 - x0)
            fy = (y - y0) / ((y1 - y0) or 1.0)
            return QPointF(area.left() + fx * area.width(), area.bottom() - fy * area.height())

        for series, color, (y0, y1) in ((self.loss, LOSS_COLOR, (lmin, lmax)),
                                        (self.iou, IOU_COLOR, (0.0, 1.0))):
            if not series:
                continue
            path = QPainterPath(pt(*series[0], y0, y1))
            for x, y in series[1:]:
                path.lineTo(pt(x, y, y0, y1))
            p.setPen(QPen(color, 2))
            p.drawPath(path)
            if len(series) == 1 or color == IOU_COLOR:
                for x, y in series:
                    p.drawEllipse(pt(x, y, y0, y1), 2.5, 2.5)
        p.setPen(QPen(LOSS_COLOR))
        p.drawText(QRectF(0, top - 4, left - 4, 14), Qt.AlignmentFlag.AlignRight, f"{lmax:.2g}")
        p.drawText(QRectF(0, area.bottom() - 10, left - 4, 14), Qt.AlignmentFlag.AlignRight, "0")
        p.setPen(QPen(IOU_COLOR))
        p.drawText(QRectF(area.right() + 4, top - 4, right, 14), Qt.AlignmentFlag.AlignLeft, "1")
        p.drawText(QRectF(area.right() + 4, area.bottom() - 10, right, 14),
                   Qt.AlignmentFlag.AlignLeft, "0")
        last_loss = f"loss {self.loss[-1][1]:.3f}" if self.loss else "loss"
        best = self.best_iou()  # the model kept is the best one, not the last
        last_iou = f"best val mIoU {best:.3f}" if best is not None else "val mIoU"
        p.setPen(QPen(LOSS_COLOR))
        p.drawText(QRectF(left, 0, area.width() / 2, 16), Qt.AlignmentFlag.AlignLeft, last_loss)
        p.setPen(QPen(IOU_COLOR))
        p.drawText(QRectF(left + area.width() / 2, 0, area.width() / 2, 16),
                   Qt.AlignmentFlag.AlignRight, last_iou)
        p.setPen(QPen(text))
        p.drawText(QRectF(left, area.bottom() + 2, area.width(), 16),
                   Qt.AlignmentFlag.AlignHCenter, "step")
        p.end()
