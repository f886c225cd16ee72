"""The straightforward implementation of the paper's inpainting GAN step, as a typical PyTorch port writes it: the
yardstick `cebench bench` measures the suite's GAN step against, in the same run on the same machine.

The architecture, batch, loss and optimiser settings are the suite's `inpaint_paper` step (128 px input, DCGAN
encoder to a 4000-unit bottleneck, 64 px centre output, discriminator on the centre, joint loss 0.999 L2 with the
overlap ring weighted 10x + 0.001 adversarial, Adam beta1 0.5): what differs is only how it is written. Plain
nn.Conv2d / nn.ConvTranspose2d layers in NCHW, fp32, torch's default Adam, the mask and loss arithmetic in the
obvious elementwise form, a fresh mask tensor every step. Written from the paper's description for this benchmark.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn


def _down(cin: int, cout: int, bn: bool) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 4, 2, 1, bias=not bn), *([nn.BatchNorm2d(cout)] if bn else []), nn.LeakyReLU(0.2, True)]


def _up(cin: int, cout: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]


def generator(bottleneck: int = 4000) -> nn.Module:
    """128 px masked image -> 64 px centre."""
    return nn.Sequential(
        *_down(3, 64, False), *_down(64, 64, True), *_down(64, 128, True), *_down(128, 256, True),
        *_down(256, 512, True),
        nn.Conv2d(512, bottleneck, 4, bias=False), nn.BatchNorm2d(bottleneck), nn.LeakyReLU(0.2, True),
        nn.ConvTranspose2d(bottleneck, 512, 4, bias=False), nn.BatchNorm2d(512), nn.ReLU(True),
        *_up(512, 256), *_up(256, 128), *_up(128, 64),
        nn.ConvTranspose2d(64, 3, 4, 2, 1), nn.Tanh())


def discriminator() -> nn.Module:
    """64 px centre -> probability that it is real."""
    return nn.Sequential(*_down(3, 64, False), *_down(64, 128, True), *_down(128, 256, True), *_down(256, 512, True),
                         nn.Conv2d(512, 1, 4), nn.Sigmoid())


def step_runner(batch: int = 64, seed: int = 0, device: str = "cpu") -> Callable[[int], float]:
    """Build both networks once on `device`; the returned function runs step i (one discriminator and one generator
    update on random images) and returns its wall seconds."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    net_g, net_d = generator().to(dev), discriminator().to(dev)
    opt_g = torch.optim.Adam(net_g.parameters(), lr=0.002, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(net_d.parameters(), lr=0.0002, betas=(0.5, 0.999))
    bce, images = nn.BCELoss(), torch.rand(batch, 3, 128, 128, device=dev) * 2 - 1
    real_label, fake_label = torch.ones(batch, device=dev), torch.zeros(batch, device=dev)

    def step(i: int) -> float:
        start = time.perf_counter()
        center = images[:, :, 32:96, 32:96].clone()
        masked = images.clone()
        # the hole: the central 64 px minus a 4 px overlap ring, filled with the mean (0 here)
        masked[:, :, 36:92, 36:92] = 0.0
        weight = torch.full((batch, 3, 64, 64), 10.0, device=dev)
        weight[:, :, 4:60, 4:60] = 1.0
        fake = net_g(masked)
        opt_d.zero_grad()
        loss_d = bce(net_d(center).view(-1), real_label) + bce(net_d(fake.detach()).view(-1), fake_label)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad()
        loss_adv = bce(net_d(fake).view(-1), real_label)
        loss_rec = (weight * (fake - center) ** 2).mean()
        (0.999 * loss_rec + 0.001 * loss_adv).backward()
        opt_g.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    return step


def measure(batch: int, steps: int, warmup: int, device: str = "cpu") -> dict:
    """Images/s of the median step after `warmup` untimed ones."""
    step = step_runner(batch, device=device)
    seconds = sorted([step(i) for i in range(warmup + steps)][warmup:])
    median = seconds[len(seconds) // 2]
    return {"batch": batch, "steps_timed": steps, "seconds_per_step": median, "images_per_s": batch / median,
            "precision": "fp32", "channels_last": False, "device": device}
