#!/bin/bash -e
# hsmpool's token set-up for pkcs11-provider's own test suites, written for hsmpool (Apache-2.0).
# tests/interop/pkcs11_provider.rs copies it into the provider's tests/ directory beside
# softhsm-init.sh; the provider's tests/setup.sh sources it for the token types "hsmpool" (the
# embedded default, made here under $TOKDIR), "hsmpool.cluster" (the harness has started three
# hsmpool-hsmd daemons and names their client configuration in HSMPOOL_CLUSTER_CONF) and
# "hsmpool.softhsm" (three SoftHSMv2 tokens as members: HSMPOOL_CLUSTER_CONF names them, and
# SOFTHSM2_CONF, set by the harness, SoftHSMv2's own configuration) and "hsmpool.mixed" (one
# daemon, one SoftHSMv2 token and one NSS softokn database: HSMPOOL_CLUSTER_CONF and
# SOFTHSM2_CONF as for hsmpool.softhsm).
# In: HSMPOOL_MODULE (the built libhsmpool_pkcs11.so), and the provider's TOKDIR, TOKENTYPE,
# PINVALUE. Out: what setup.sh expects of a token script (P11LIB, TOKENLABEL, TOKENLABELURI,
# TOKENCONFIGVARS, TESTPORT, SUPPORT_*).

title SECTION "Setting up an hsmpool token (${TOKENTYPE})"

if [ -z "${HSMPOOL_MODULE}" ] || [ ! -f "${HSMPOOL_MODULE}" ]; then
    echo "HSMPOOL_MODULE must name the built libhsmpool_pkcs11.so (got '${HSMPOOL_MODULE}')"
    exit 1
fi
P11LIB="${HSMPOOL_MODULE}"
export P11LIB

if [ "${TOKENTYPE}" == "hsmpool.cluster" ] || [ "${TOKENTYPE}" == "hsmpool.softhsm" ] ||
    [ "${TOKENTYPE}" == "hsmpool.mixed" ]; then
    if [ -z "${HSMPOOL_CLUSTER_CONF}" ] || [ ! -f "${HSMPOOL_CLUSTER_CONF}" ]; then
        echo "HSMPOOL_CLUSTER_CONF must name the cluster's client configuration"
        exit 1
    fi
    HSMPOOL_CONF="${HSMPOOL_CLUSTER_CONF}"
    if [ "${TOKENTYPE}" == "hsmpool.softhsm" ]; then
        export TESTPORT="37000"
    elif [ "${TOKENTYPE}" == "hsmpool.mixed" ]; then
        export TESTPORT="38000"
    else
        export TESTPORT="36000"
    fi
else
    # The embedded default: one in-process simulated HSM whose store lives in the token dir.
    HSMPOOL_CONF="${TOKDIR}/hsmpool.toml"
    cat >"${HSMPOOL_CONF}" <<CONF
[[member]]
kind = "embedded"
data_dir = "${TOKDIR}/hsm0"
pin_iterations = 1000
CONF
    export TESTPORT="35000"
fi
export HSMPOOL_CONF

export TOKENLABEL="hsmpool"
export TOKENLABELURI="hsmpool"

# A fresh token: initialise it and set the user PIN, as an administrator would with OpenSC.
pkcs11-tool --module "${P11LIB}" --init-token \
    --label "${TOKENLABEL}" --so-pin "${PINVALUE}" 2>&1
pkcs11-tool --module "${P11LIB}" --so-pin "${PINVALUE}" \
    --login --login-type so --init-pin --pin "${PINVALUE}" 2>&1

export TOKENCONFIGVARS="export HSMPOOL_CONF=${HSMPOOL_CONF}"
if [ "${TOKENTYPE}" == "hsmpool.softhsm" ] || [ "${TOKENTYPE}" == "hsmpool.mixed" ]; then
    TOKENCONFIGVARS="${TOKENCONFIGVARS}
export SOFTHSM2_CONF=${SOFTHSM2_CONF}"
fi

if [ "${TOKENTYPE}" == "hsmpool.mixed" ]; then
    # NSS softokn keeps no CKA_ALLOWED_MECHANISMS, so hsmpool refuses a token key restricted
    # by it on a cluster with an NSS member (it could not hold the restriction there).
    export SUPPORT_ALLOWED_MECHANISMS=0
else
    export SUPPORT_ALLOWED_MECHANISMS=1
fi
# What hsmpool does not offer (README, "OpenSSL 3 with the pkcs11-provider"): Ed448 and the
# Montgomery curves X25519/X448 (no key types for them yet), ML-DSA and ML-KEM (issue 17).
export SUPPORT_ED448=0
export SUPPORT_X25519=0
export SUPPORT_X448=0
export SUPPORT_ML_DSA=0
export SUPPORT_ML_KEM=0
if [ "${TOKENTYPE}" == "hsmpool.softhsm" ] || [ "${TOKENTYPE}" == "hsmpool.mixed" ]; then
    # SoftHSMv2 cannot wrap an EdDSA private key, so Ed25519 token keys cannot reach every
    # member and hsmpool refuses them (README, "SoftHSMv2").
    export SUPPORT_ED25519=0
fi
