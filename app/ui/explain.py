"""Explanatory text of the playground: the two adapters, the floor lines, what to look for."""

from __future__ import annotations

import streamlit as st

INTRO = (
    "LoRA and NoRA wrap the same frozen layer $W_0$, start from the same seed and see the same "
    "batches; only the adapter differs. Press **Play** and watch the loss, the spectra and the "
    "effective rank evolve."
)

ADAPTERS = r"""
| | update | can it be merged into $W_0$? |
|---|---|---|
| **LoRA** | $y = W_0x + s\,B\,A\,x$ : linear, rank $\le r$ | yes: $W_0 + sBA$ |
| **NoRA** | $y = W_0x + s\,B\,\mathrm{act}(A\,x)$ : activation on the $r$-dim bottleneck | no: the activation sits between $A$ and $B$ |

$A$ is $r\times d_{in}$, $B$ is $d_{out}\times r$ and starts at zero, so both runs start at
the base model's loss. The scale is $s = \alpha / r$ (`lora_alpha / r`), or $\alpha/\sqrt{r}$
with rsLoRA scaling. NoRA applies its activation (SiLU by default) and its dropout to the
$r$-dimensional bottleneck; LoRA applies dropout to the input. With the identity activation
and equal settings NoRA computes exactly what LoRA computes.
"""

FLOORS = r"""
**Non-linear teacher** ($y = W_0x + g(x)$): the *linear ceiling* is the lowest loss that any
linear update of **any rank** can reach, the least-squares residual of $g(x)$ on $x$. LoRA
cannot go below it however large $r$ is; NoRA, being non-linear, can. The second line is the
best linear map of LoRA's rank $r$, which lies at or above the ceiling.

**Linear teacher** ($y = (W_0 + \Delta W^*)x$): the *Eckart–Young floor* at LoRA's $r$ is the
error of the best rank-$r$ approximation of $\Delta W^*$. LoRA should approach it, and no
linear update of rank $r$ beats it. NoRA is usually slightly worse here.

The 2-D classification task has no closed-form floor; its decision regions are drawn instead.
"""

LOOK_FOR = r"""
- **LoRA flattening at the linear ceiling** on the non-linear teacher, at every rank.
- **NoRA going below it**: the activation lets $x \mapsto \Delta y$ be non-linear.
- **Effective rank** $\exp(H(p))$, $p_i = \sigma_i/\sum\sigma$: how evenly an adapter uses its
  $r$ directions. The output view (singular values of the centred adapter outputs $\Delta y$)
  exists for both runs; the weight view ($\Delta W = sBA$) only for linear LoRA. Both views
  have at most $r$ non-zero values, because $\Delta y$ lies in the column space of $B$.
- **Settings**: the learning rate applies at once, to the running trainer; every other
  change applies when you press **Reset**. A learning rate that is too large makes a run
  diverge: it stops with a message while the other run goes on.
"""


def show_intro() -> None:
    """Draw the short introduction and the expandable explanations."""
    st.markdown(INTRO)
    with st.expander("What are LoRA and NoRA?"):
        st.markdown(ADAPTERS)
    with st.expander("What do the dashed floor lines mean?"):
        st.markdown(FLOORS)
    with st.expander("What to look for"):
        st.markdown(LOOK_FOR)
