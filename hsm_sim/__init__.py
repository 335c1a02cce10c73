"""hsm_sim: the software HSM (../shared/contract/hsm-commands.md) and its client.

Only ``hsm_sim.client`` is for other components (switch, host); it imports nothing else from here but
``hsm_sim.errors``. The service:

    errors    error codes and HsmFault            fields   request field reader (15 on bad input)
    crypto    cached DES/3DES/SM4 ECB, parity     lmk      LMK sets, key types, keys under LMK, file
    mac       X9.19, ISO 9797-1 alg 1, CUP MAC    pin      PIN blocks (ISO 0/1/3, SM4), PVV
    keys      KeyStore: keys under LMK / ZMK      cmd_*    command handlers (keys, pin, mac, data)
    engine    command table, one frame → answer   server   trio TCP service, metrics
    cli       payswitch hsm init | serve | form-key | kcv | diag

Choices where the contract is silent:
- PIN block format codes (payShield): 01 ISO 9564 format 0, 05 format 1, 47 format 3; CA, CC and EC
  take all three, W8 and WV format 0 only (SM4: format 0 + 8 bytes FF).
- A6, A8, SV, ST take an optional trailing ``;`` + flag (0 ZMK, the default; 1 TMK) to move keys under
  a TMK too. A6/A8 also take T/Y (triple-length) keys under a ZMK.
- BU also gives the SM4 check value of an ``S`` key (length flag 1); a length flag that does not match
  the key is 05.
- Key types: any ``vPP`` with v 0-9 and PP 00-0E; unknown → 04. MAC commands take 003 and 008, M0/M2
  only 00A, W8's source 001 or 002; another known type → 29.
- Parity: 10 for the source or only key (the KEK in A0/A6/A8/SV/ST/WI), 11 for the destination key
  (the key imported or exported, the destination ZPK, EC/WV's PVK). An all-zero SM4 key counts as a
  parity error. The PVK must be double length (``U``); another length is 27.
- PIN length above CA/CC's maximum PIN length is 24. M6/M8 accept input format 1 (hex) as M0 does.
- Anything after the last field is 15. Command codes are case-sensitive (``nc`` is unknown, 68).
- Production LMK file: JSON with 20 random odd-parity 3DES pairs and 20 random SM4 keys, the check
  value stored and verified on load.
"""
