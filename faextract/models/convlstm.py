"""ConvLSTM2D, numerically identical to ``keras.layers.ConvLSTM2D`` (Keras 3).

The baseline every FAConvLSTM comparison is made against, so it is the real thing: same
arguments and defaults, same gate order (i, f, c, o), same initializers (glorot_uniform kernel,
orthogonal recurrent kernel, zero bias with ``unit_forget_bias``), TensorFlow-style asymmetric
'same' padding, a recurrent convolution that is always 'same', stride 1, no bias.

Weights are stored in torch layout: ``kernel (4F, C, kh, kw)``, ``recurrent_kernel (4F, F, kh, kw)``,
``bias (4F,)``; :meth:`ConvLSTM2D.load_keras_weights` / :meth:`keras_weights` convert from and to
Keras' ``(kh, kw, C, 4F)`` / ``(kh, kw, F, 4F)`` / ``(4F,)``.

Speed: the input convolution of all timesteps runs as one batched convolution before the loop;
only the recurrent convolution runs per step.

Dropout (training only) follows Gal & Ghahramani as Keras 2 did: one mask per sequence and gate,
on the inputs (``dropout``) and on ``h`` (``recurrent_dropout``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faextract.models.layers import get_activation, glorot_uniform_, orthogonal_, same_padding
from faextract.models.recurrent import RecurrentConv2D


class ConvLSTM2D(RecurrentConv2D):
    """Keras ConvLSTM2D in PyTorch. Input ``(B, T, H, W, C)`` (channels_last) or ``(B, T, C, H, W)``."""

    def _build(self, in_channels: int) -> None:
        F_, (kh, kw) = self.filters, self.kernel_size
        self.kernel = nn.Parameter(torch.empty(4 * F_, in_channels, kh, kw))
        self.recurrent_kernel = nn.Parameter(torch.empty(4 * F_, F_, kh, kw))
        self.bias = nn.Parameter(torch.zeros(4 * F_)) if self.use_bias else None
        self.act = get_activation(self.activation_name)
        self.rec_act = get_activation(self.recurrent_activation_name)
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        F_, (kh, kw) = self.filters, self.kernel_size
        C = self.kernel.shape[1]
        glorot_uniform_(self.kernel, kh * kw * C, kh * kw * 4 * F_, generator)
        with torch.no_grad():
            rk = orthogonal_((kh, kw, F_, 4 * F_), generator)
            self.recurrent_kernel.copy_(rk.permute(3, 2, 0, 1))
            if self.bias is not None:
                self.bias.zero_()
                if self.unit_forget_bias:
                    self.bias[F_ : 2 * F_] = 1.0

    # -- Keras weight layout --------------------------------------------------------------
    def load_keras_weights(self, kernel, recurrent_kernel, bias=None) -> None:
        """Copy Keras weights: ``kernel (kh, kw, C, 4F)``, ``recurrent_kernel (kh, kw, F, 4F)``, ``bias (4F,)``."""
        k = torch.as_tensor(np.asarray(kernel), dtype=torch.float32)
        if not self.built:
            self.in_channels = int(k.shape[2])
            self._build(self.in_channels)
            self.built = True
        expect = (*self.kernel_size, self.in_channels, 4 * self.filters)
        if tuple(k.shape) != expect:
            raise ValueError(f"kernel shape {tuple(k.shape)} does not match the layer's {expect}")
        rk = torch.as_tensor(np.asarray(recurrent_kernel), dtype=torch.float32)
        with torch.no_grad():
            self.kernel.copy_(k.permute(3, 2, 0, 1))
            self.recurrent_kernel.copy_(rk.permute(3, 2, 0, 1))
            if self.bias is not None:
                if bias is None:
                    raise ValueError("this layer uses a bias: pass Keras' bias too")
                self.bias.copy_(torch.as_tensor(np.asarray(bias), dtype=torch.float32))

    def keras_weights(self) -> list[np.ndarray]:
        """``[kernel, recurrent_kernel, (bias)]`` in Keras' layout, as numpy arrays."""
        out = [
            self.kernel.detach().permute(2, 3, 1, 0).cpu().numpy(),
            self.recurrent_kernel.detach().permute(2, 3, 1, 0).cpu().numpy(),
        ]
        if self.bias is not None:
            out.append(self.bias.detach().cpu().numpy())
        return out

    # -- computation ----------------------------------------------------------------------
    def _recurrent_conv(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        t, b = same_padding(h.shape[-2], kh, 1, 1)
        le, r = same_padding(h.shape[-1], kw, 1, 1)
        return F.conv2d(F.pad(h, (le, r, t, b)), weight)

    def _run(self, x: torch.Tensor, state, need_weights: bool = False):
        B, T, C, H, W = x.shape
        F_ = self.filters
        Ho, Wo = self.output_size(H, W)
        flat = x.reshape(B * T, C, H, W)
        in_masks = self._dropout_masks(self.dropout, (B, 1, C, H, W), x, n=4)
        if in_masks is None:
            xz = self._input_conv(flat, self.kernel, self.bias)  # (B*T, 4F, Ho, Wo)
        else:
            gates = []
            for g in range(4):
                xg = (x * in_masks[g]).reshape(B * T, C, H, W)
                bg = self.bias[g * F_ : (g + 1) * F_] if self.bias is not None else None
                gates.append(self._input_conv(xg, self.kernel[g * F_ : (g + 1) * F_], bg))
            xz = torch.cat(gates, dim=1)
        xz = xz.reshape(B, T, 4 * F_, Ho, Wo)
        if state is None:
            h = x.new_zeros(B, F_, Ho, Wo)
            c = x.new_zeros(B, F_, Ho, Wo)
        else:
            h, c = state[0], state[1]
        rec_masks = self._dropout_masks(self.recurrent_dropout, (B, F_, Ho, Wo), x, n=4)
        outs = []
        for xz_t in xz.unbind(1):  # unbind: see scan.sequential_scan on indexing in loops
            if rec_masks is None:
                rz = self._recurrent_conv(h, self.recurrent_kernel)
            else:
                rz = torch.cat(
                    [
                        self._recurrent_conv(
                            h * rec_masks[g], self.recurrent_kernel[g * F_ : (g + 1) * F_]
                        )
                        for g in range(4)
                    ],
                    dim=1,
                )
            z = xz_t + rz
            zi, zf, zc, zo = z.chunk(4, dim=1)
            i = self.rec_act(zi)
            f = self.rec_act(zf)
            c = f * c + i * self.act(zc)
            o = self.rec_act(zo)
            h = o * self.act(c)
            outs.append(h)
        return torch.stack(outs, dim=1), [h, c], []
