"""Built-in adapters, one method per file. Importing this package registers them all."""

from adapters import (
    adabn,  # noqa: F401
    adamatch,  # noqa: F401
    bn_prior,  # noqa: F401
    camera_bn,  # noqa: F401
    cdn,  # noqa: F401
    context_norm,  # noqa: F401
    context_norm_group,  # noqa: F401
    cotta,  # noqa: F401
    deyo,  # noqa: F401
    domain_norm,  # noqa: F401
    dsbn,  # noqa: F401
    dua,  # noqa: F401
    eata,  # noqa: F401
    eta,  # noqa: F401
    ibn_a,  # noqa: F401
    ibn_b,  # noqa: F401
    irw,  # noqa: F401
    isw,  # noqa: F401
    iw,  # noqa: F401
    lame,  # noqa: F401
    modality_bn,  # noqa: F401
    note,  # noqa: F401
    ptbn,  # noqa: F401
    rdumb,  # noqa: F401
    roid,  # noqa: F401
    rotta,  # noqa: F401
    sar,  # noqa: F401
    sbn,  # noqa: F401
    source,  # noqa: F401
    switchable_norm,  # noqa: F401
    t3a,  # noqa: F401
    tent,  # noqa: F401
    transnorm,  # noqa: F401
    unmix_tns,  # noqa: F401
)
