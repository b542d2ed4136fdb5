// The Java 17 SunPKCS11 interop client (issue 6): loads libhsmpool_pkcs11.so through a
// SunPKCS11 configuration and exercises it as a Java application would. Run by
// tests/interop/java.rs, which compiles this file with javac and turns every output line into a
// check of its tally:
//
//   PASS <name>            the check passed
//   FAIL <name>: <why>     it failed (the suite fails)
//   DONE <n>               the program reached its end after n checks
//
// Usage: java HsmpoolInterop <sunpkcs11.cfg> <user PIN> <off|on> <alias>...
//   off: the module runs without [compat] self_signed_certificates; the named aliases (token key
//        pairs made outside Java, with no certificate) must be missing from the KeyStore.
//   on:  the option is set; the named aliases must be listed, with a self-signed certificate
//        whose public key verifies signatures made through the KeyStore entry's private key.
//
// Every signature made by the token is verified by the JDK's own providers (SunRsaSign, SunEC)
// with the public key re-imported from its encoding, and every ciphertext made with a key of
// known value is decrypted by SunJCE (and the other way round), so a wrong answer fails.

import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.Key;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.cert.Certificate;
import java.security.cert.X509Certificate;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.MGF1ParameterSpec;
import java.security.spec.PSSParameterSpec;
import java.security.spec.X509EncodedKeySpec;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;
import java.util.TreeSet;
import java.util.concurrent.Callable;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.KeyGenerator;
import javax.crypto.SecretKey;
import javax.crypto.SecretKeyFactory;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.IvParameterSpec;
import javax.crypto.spec.SecretKeySpec;

public final class HsmpoolInterop {
    static final int THREADS = 32;
    static final int ROUNDS = 3;
    static final SecureRandom RNG = new SecureRandom();
    static final PSSParameterSpec PSS =
            new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1);

    static int checks = 0;
    static Provider p11;

    interface Body {
        String run() throws Exception;
    }

    /** Run one named check: PASS (with the detail the body returns) or FAIL with the reason. */
    static boolean check(String name, Body body) {
        checks++;
        try {
            String detail = body.run();
            System.out.println("PASS " + name + (detail == null ? "" : " (" + detail + ")"));
            System.out.flush();
            return true;
        } catch (Throwable e) {
            System.out.println("FAIL " + name + ": " + describe(e));
            System.out.flush();
            return false;
        }
    }

    static String describe(Throwable e) {
        StringBuilder sb = new StringBuilder();
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (sb.length() > 0) {
                sb.append(" <- ");
            }
            sb.append(t.getClass().getName()).append(": ").append(t.getMessage());
            StackTraceElement[] st = t.getStackTrace();
            if (st.length > 0) {
                sb.append(" at ").append(st[0]);
            }
        }
        return sb.toString().replace('\n', ' ');
    }

    static void ensure(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    static byte[] bytes(int n) {
        byte[] b = new byte[n];
        RNG.nextBytes(b);
        return b;
    }

    // ----- verification with the JDK's own providers ---------------------------------------

    /** The public key re-imported by the JDK's own KeyFactory from its X.509 encoding. */
    static PublicKey jdkPublic(PublicKey k) throws GeneralSecurityException {
        String alg = k.getAlgorithm();
        String provider = alg.equals("EC") ? "SunEC" : "SunRsaSign";
        return KeyFactory.getInstance(alg, provider)
                .generatePublic(new X509EncodedKeySpec(k.getEncoded()));
    }

    static String jdkProviderFor(String sigAlg) {
        return sigAlg.contains("ECDSA") ? "SunEC" : "SunRsaSign";
    }

    /** Sign with the token's provider. */
    static byte[] tokenSign(String alg, PrivateKey k, byte[] msg) throws GeneralSecurityException {
        Signature s = Signature.getInstance(alg, p11);
        if (alg.contains("PSS")) {
            s.setParameter(PSS);
        }
        s.initSign(k);
        s.update(msg);
        return s.sign();
    }

    /** Verify with the JDK's own provider and a JDK copy of the public key. */
    static boolean jdkVerify(String alg, PublicKey pub, byte[] msg, byte[] sig)
            throws GeneralSecurityException {
        Signature v = Signature.getInstance(alg, jdkProviderFor(alg));
        if (alg.contains("PSS")) {
            v.setParameter(PSS);
        }
        v.initVerify(jdkPublic(pub));
        v.update(msg);
        return v.verify(sig);
    }

    /** Sign with the token, verify with the JDK; a changed message must not verify. */
    static String signAndVerify(String alg, KeyPair kp) throws GeneralSecurityException {
        byte[] msg = bytes(200);
        byte[] sig = tokenSign(alg, kp.getPrivate(), msg);
        ensure(jdkVerify(alg, kp.getPublic(), msg, sig), alg + " signature rejected by the JDK");
        msg[7] ^= 1;
        ensure(!jdkVerify(alg, kp.getPublic(), msg, sig),
                alg + " signature accepted for a different message");
        return sig.length + "-byte signature";
    }

    // ----- AES -------------------------------------------------------------------------------

    static final String GCM = "AES/GCM/NoPadding";
    static final String CBC = "AES/CBC/PKCS5Padding";

    static java.security.spec.AlgorithmParameterSpec params(String alg, byte[] iv) {
        return alg.equals(GCM) ? new GCMParameterSpec(128, iv) : new IvParameterSpec(iv);
    }

    static byte[] crypt(Object provider, String alg, int mode, Key k, byte[] iv, byte[] aad,
            byte[] in) throws GeneralSecurityException {
        Cipher c = provider instanceof Provider
                ? Cipher.getInstance(alg, (Provider) provider)
                : Cipher.getInstance(alg, (String) provider);
        c.init(mode, k, params(alg, iv));
        if (alg.equals(GCM)) {
            c.updateAAD(aad);
        }
        return c.doFinal(in);
    }

    /** Encrypt and decrypt with the token; for GCM a changed ciphertext must be refused. */
    static String tokenRoundTrip(String alg, SecretKey k) throws GeneralSecurityException {
        byte[] iv = bytes(alg.equals(GCM) ? 12 : 16);
        byte[] aad = bytes(20);
        byte[] plain = bytes(1000 + RNG.nextInt(100));
        byte[] ct = crypt(p11, alg, Cipher.ENCRYPT_MODE, k, iv, aad, plain);
        int expected = alg.equals(GCM) ? plain.length + 16 : (plain.length / 16 + 1) * 16;
        ensure(ct.length == expected, "ciphertext of " + ct.length + " bytes, not " + expected);
        byte[] back = crypt(p11, alg, Cipher.DECRYPT_MODE, k, iv, aad, ct);
        ensure(Arrays.equals(back, plain), "the token's decryption differs from the plaintext");
        if (alg.equals(GCM)) {
            ct[3] ^= 1;
            try {
                crypt(p11, alg, Cipher.DECRYPT_MODE, k, iv, aad, ct);
                throw new AssertionError("a changed GCM ciphertext was decrypted");
            } catch (AEADBadTagException expectedFailure) {
                // the tag check failed, as it must
            }
        }
        return plain.length + " bytes";
    }

    /** With a key of known value: token ciphertext decrypted by SunJCE and the other way. */
    static String crossCheck(String alg, SecretKey tokenKey, SecretKeySpec jdkKey)
            throws GeneralSecurityException {
        byte[] iv = bytes(alg.equals(GCM) ? 12 : 16);
        byte[] aad = bytes(13);
        byte[] plain = bytes(777);
        byte[] ct = crypt(p11, alg, Cipher.ENCRYPT_MODE, tokenKey, iv, aad, plain);
        byte[] jdkCt = crypt("SunJCE", alg, Cipher.ENCRYPT_MODE, jdkKey, iv, aad, plain);
        ensure(Arrays.equals(ct, jdkCt), "token and SunJCE ciphertexts differ");
        ensure(Arrays.equals(crypt("SunJCE", alg, Cipher.DECRYPT_MODE, jdkKey, iv, aad, ct), plain),
                "SunJCE cannot decrypt the token's ciphertext");
        byte[] iv2 = bytes(iv.length);
        byte[] jdkCt2 = crypt("SunJCE", alg, Cipher.ENCRYPT_MODE, jdkKey, iv2, aad, plain);
        ensure(Arrays.equals(crypt(p11, alg, Cipher.DECRYPT_MODE, tokenKey, iv2, aad, jdkCt2),
                plain), "the token cannot decrypt SunJCE's ciphertext");
        return "equal to SunJCE both ways";
    }

    // ----- the program -----------------------------------------------------------------------

    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: HsmpoolInterop <sunpkcs11.cfg> <user PIN> <off|on> <alias>...");
            System.exit(2);
        }
        String cfg = args[0];
        char[] pin = args[1].toCharArray();
        boolean certs = args[2].equals("on");
        List<String> outside = Arrays.asList(args).subList(3, args.length);

        check("SunPKCS11 loads the module (Java " + System.getProperty("java.version") + ")",
                () -> {
                    Provider base = Security.getProvider("SunPKCS11");
                    ensure(base != null, "no SunPKCS11 provider in this JDK");
                    p11 = base.configure(cfg);
                    Security.addProvider(p11);
                    return p11.getName();
                });
        if (p11 == null) {
            System.out.println("DONE " + checks);
            return;
        }

        KeyStore[] ksHolder = new KeyStore[1];
        check("the KeyStore loads (C_Login with the user PIN)", () -> {
            KeyStore ks = KeyStore.getInstance("PKCS11", p11);
            ks.load(null, pin);
            ksHolder[0] = ks;
            return ks.size() + " entries";
        });
        KeyStore ks = ksHolder[0];

        // Keys without a certificate: the SunPKCS11 KeyStore trap, and the option that avoids it.
        if (ks != null) {
            keyStoreChecks(ks, pin, certs, outside);
        }

        // Key generation in the token (session objects, as SunPKCS11 makes them).
        KeyPair[] rsa = new KeyPair[1];
        KeyPair[] ec = new KeyPair[1];
        SecretKey[] aes = new SecretKey[1];
        check("KeyPairGenerator RSA-2048 in the token", () -> {
            KeyPairGenerator g = KeyPairGenerator.getInstance("RSA", p11);
            g.initialize(2048);
            rsa[0] = g.generateKeyPair();
            ensure(rsa[0].getPrivate().getEncoded() == null, "the private key left the token");
            return rsa[0].getPrivate().getClass().getSimpleName();
        });
        check("KeyPairGenerator EC secp256r1 in the token", () -> {
            KeyPairGenerator g = KeyPairGenerator.getInstance("EC", p11);
            g.initialize(new ECGenParameterSpec("secp256r1"));
            ec[0] = g.generateKeyPair();
            ensure(ec[0].getPrivate().getEncoded() == null, "the private key left the token");
            return ec[0].getPublic().getAlgorithm();
        });
        check("KeyGenerator AES-256 in the token (value not extractable)", () -> {
            KeyGenerator g = KeyGenerator.getInstance("AES", p11);
            g.init(256);
            aes[0] = g.generateKey();
            ensure(aes[0].getEncoded() == null, "the generated AES key's value left the token");
            return aes[0].getClass().getSimpleName();
        });

        if (rsa[0] != null) {
            check("SHA256withRSA by the token, verified by SunRsaSign",
                    () -> signAndVerify("SHA256withRSA", rsa[0]));
            check("RSASSA-PSS (SHA-256, MGF1, salt 32) by the token, verified by SunRsaSign",
                    () -> signAndVerify("RSASSA-PSS", rsa[0]));
        }
        if (ec[0] != null) {
            check("SHA256withECDSA by the token, verified by SunEC",
                    () -> signAndVerify("SHA256withECDSA", ec[0]));
        }
        if (aes[0] != null) {
            check("AES/GCM/NoPadding with the generated key: token round trip, tag checked",
                    () -> tokenRoundTrip(GCM, aes[0]));
            check("AES/CBC/PKCS5Padding with the generated key: token round trip",
                    () -> tokenRoundTrip(CBC, aes[0]));
        }

        byte[] known = bytes(32);
        SecretKeySpec jdkAes = new SecretKeySpec(known, "AES");
        SecretKey[] imported = new SecretKey[1];
        check("SecretKeyFactory AES imports a key of known value into the token", () -> {
            imported[0] = (SecretKey) SecretKeyFactory.getInstance("AES", p11).translateKey(jdkAes);
            ensure(imported[0].getClass().getName().contains("P11"),
                    "the key was not put in the token: " + imported[0].getClass());
            return imported[0].getClass().getSimpleName();
        });
        if (imported[0] != null) {
            check("AES/GCM/NoPadding with the imported key equals SunJCE",
                    () -> crossCheck(GCM, imported[0], jdkAes));
            check("AES/CBC/PKCS5Padding with the imported key equals SunJCE",
                    () -> crossCheck(CBC, imported[0], jdkAes));
        }

        if (rsa[0] != null && ec[0] != null && imported[0] != null) {
            check(THREADS + " threads at once: generate, sign, encrypt",
                    () -> threads(rsa[0], imported[0], jdkAes));
        }

        System.out.println("DONE " + checks);
    }

    static void keyStoreChecks(KeyStore ks, char[] pin, boolean certs, List<String> outside) {
        TreeSet<String> aliases = new TreeSet<>();
        check("KeyStore.aliases()", () -> {
            aliases.addAll(Collections.list(ks.aliases()));
            return aliases.toString();
        });
        if (!certs) {
            for (String alias : outside) {
                check("without self_signed_certificates, the key pair '" + alias
                        + "' made outside Java (no certificate) is missing from the KeyStore", () -> {
                    ensure(!aliases.contains(alias), "'" + alias + "' is listed");
                    ensure(!ks.containsAlias(alias), "containsAlias('" + alias + "') is true");
                    return null;
                });
            }
            return;
        }
        check("with self_signed_certificates, the KeyStore lists exactly the key pairs made outside Java",
                () -> {
                    ensure(aliases.equals(new TreeSet<>(outside)),
                            "aliases " + aliases + ", expected " + outside);
                    return null;
                });
        for (String alias : outside) {
            check("'" + alias + "' is a private key entry whose self-signed certificate verifies",
                    () -> {
                        ensure(ks.isKeyEntry(alias), "not a key entry");
                        KeyStore.Entry e = ks.getEntry(alias, new KeyStore.PasswordProtection(pin));
                        ensure(e instanceof KeyStore.PrivateKeyEntry, "entry is " + e);
                        Certificate c = ((KeyStore.PrivateKeyEntry) e).getCertificate();
                        ensure(c instanceof X509Certificate, "certificate is " + c);
                        X509Certificate x = (X509Certificate) c;
                        ensure(x.getSubjectX500Principal().equals(x.getIssuerX500Principal()),
                                "subject and issuer differ");
                        ensure(x.getSubjectX500Principal().getName().contains("CN=" + alias),
                                "subject " + x.getSubjectX500Principal());
                        String provider = x.getPublicKey().getAlgorithm().equals("EC") ? "SunEC"
                                : "SunRsaSign";
                        x.verify(x.getPublicKey(), Security.getProvider(provider));
                        return x.getSigAlgName() + ", " + x.getSubjectX500Principal();
                    });
            check("'" + alias + "' signs through its KeyStore entry; the certificate's key verifies",
                    () -> {
                        PrivateKey k = (PrivateKey) ks.getKey(alias, pin);
                        PublicKey certKey = ks.getCertificate(alias).getPublicKey();
                        String alg = k.getAlgorithm().equals("EC") ? "SHA256withECDSA"
                                : "SHA256withRSA";
                        return signAndVerify(alg, new KeyPair(certKey, k));
                    });
        }
    }

    /** 32 threads released together, each generating keys, signing and encrypting. */
    static String threads(KeyPair rsa, SecretKey imported, SecretKeySpec jdkAes) throws Exception {
        CyclicBarrier start = new CyclicBarrier(THREADS);
        AtomicInteger ok = new AtomicInteger();
        ExecutorService pool = Executors.newFixedThreadPool(THREADS);
        List<Future<String>> results = new ArrayList<>();
        for (int t = 0; t < THREADS; t++) {
            Callable<String> task = () -> {
                start.await(60, TimeUnit.SECONDS);
                KeyPairGenerator g = KeyPairGenerator.getInstance("EC", p11);
                g.initialize(new ECGenParameterSpec("secp256r1"));
                KeyPair ec = g.generateKeyPair();
                ok.incrementAndGet();
                KeyGenerator kg = KeyGenerator.getInstance("AES", p11);
                kg.init(128);
                SecretKey own = kg.generateKey();
                ok.incrementAndGet();
                for (int r = 0; r < ROUNDS; r++) {
                    signAndVerify("SHA256withRSA", rsa);
                    ok.incrementAndGet();
                    signAndVerify("RSASSA-PSS", rsa);
                    ok.incrementAndGet();
                    signAndVerify("SHA256withECDSA", ec);
                    ok.incrementAndGet();
                    tokenRoundTrip(GCM, own);
                    ok.incrementAndGet();
                    tokenRoundTrip(CBC, own);
                    ok.incrementAndGet();
                    crossCheck(GCM, imported, jdkAes);
                    ok.incrementAndGet();
                    crossCheck(CBC, imported, jdkAes);
                    ok.incrementAndGet();
                }
                return null;
            };
            results.add(pool.submit(task));
        }
        pool.shutdown();
        List<String> failures = new ArrayList<>();
        for (Future<String> f : results) {
            try {
                f.get(150, TimeUnit.SECONDS);
            } catch (Exception e) {
                failures.add(describe(e.getCause() != null ? e.getCause() : e));
            }
        }
        int expected = THREADS * (2 + ROUNDS * 7);
        if (!failures.isEmpty()) {
            throw new AssertionError(failures.size() + " of " + THREADS + " threads failed; "
                    + ok.get() + " of " + expected + " operations succeeded; first: "
                    + failures.get(0));
        }
        ensure(ok.get() == expected, ok.get() + " of " + expected + " operations succeeded");
        return ok.get() + " of " + expected + " operations succeeded";
    }
}
