"""Training health checks beyond the non-finite loss check: a discriminator that collapses."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DiscriminatorMonitor:
    """Watches the discriminator's mean outputs on real and predicted content at each logged step.

    A collapse is `patience` logged steps in a row where the discriminator separates real from fake almost
    perfectly (mean D(real) > 1 - margin and D(fake) < margin: the generator's adversarial gradient vanishes), or
    is inverted (D(real) < margin and D(fake) > 1 - margin). Each episode is reported once, with the step it was
    confirmed at; a step outside the condition ends it."""

    patience: int = 5
    margin: float = 0.02
    episodes: list[dict] = field(default_factory=list)
    _kind: str | None = None
    _count: int = 0

    def update(self, step: int, d_real: float, d_fake: float) -> str | None:
        """A warning the first time a collapse has lasted `patience` logged steps, else None."""
        hi, lo = 1 - self.margin, self.margin
        kind = "wins" if d_real > hi and d_fake < lo else "inverted" if d_real < lo and d_fake > hi else None
        self._count = self._count + 1 if kind is not None and kind == self._kind else (1 if kind else 0)
        self._kind = kind
        if kind is None or self._count != self.patience:
            return None
        self.episodes.append({"step": step, "kind": kind, "d_real": round(d_real, 4), "d_fake": round(d_fake, 4)})
        if kind == "wins":
            return (f"discriminator collapse at step {step}: it has told real from predicted content almost "
                    f"perfectly for {self.patience} logged steps (D(real) {d_real:.3f}, D(fake) {d_fake:.3f}), so "
                    f"the adversarial loss gives the generator no useful gradient; lower optim.lr_disc or raise "
                    f"loss.adversarial_weight")
        return (f"discriminator collapse at step {step}: its outputs have been inverted for {self.patience} logged "
                f"steps (D(real) {d_real:.3f}, D(fake) {d_fake:.3f}); the adversarial training has diverged")
