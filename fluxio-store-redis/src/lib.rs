//! Redis checkpoint store for fluxio (work in progress).
