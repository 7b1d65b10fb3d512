//! FP8 E4M3 (OCP "e4m3fn", the format of `torch.float8_e4m3fn` and of
//! Hopper's `wgmma .e4m3`): 1 sign, 4 exponent (bias 7) and 3 mantissa
//! bits, no infinities, `S.1111.111` is NaN, largest finite ±448.

/// The exact value of an e4m3 byte (every one is an f32).
pub fn e4m3_to_f32(b: u8) -> f32 {
    let (e, m) = ((b >> 3) & 15, (b & 7) as u32);
    let mag = if e == 15 && m == 7 {
        f32::NAN
    } else if e == 0 {
        m as f32 * pow2(-9)
    } else {
        (8 + m) as f32 * pow2(e as i32 - 10)
    };
    if b & 0x80 != 0 {
        -mag
    } else {
        mag
    }
}

/// `x` rounded to the nearest e4m3 (ties to even), saturating to ±448 (as
/// `torch` casts with saturation do); NaN gives `0x7f`.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    // Adding and subtracting 2^23 rounds a value below 2^22 to an integer,
    // ties to even (f32 addition rounds that way).
    let rne = |v: f32| ((v + 8_388_608.0) - 8_388_608.0) as u32;
    let code = if a >= 464.0 {
        0x7e
    } else if a < pow2(-6) {
        rne(a * pow2(9)) // subnormal (8 is the smallest normal's code)
    } else {
        let e = ((a.to_bits() >> 23) as i32 - 127).clamp(-6, 8);
        let q = rne(a * pow2(3 - e)); // 8 ..= 16
        (((e + 7) as u32) << 3) + q - 8
    };
    sign | code.min(0x7e) as u8
}

/// `2^e` for `-126 <= e <= 127`.
fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_rounding_is_nearest_even() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if b & 0x7f == 0x7f {
                assert!(v.is_nan());
                continue;
            }
            // -0 and +0 are distinct codes with equal values.
            assert_eq!(f32_to_e4m3(v), b, "code {b:#x} = {v}");
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 1.0 / 512.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(f32_to_e4m3(1000.0), 0x7e);
        assert_eq!(f32_to_e4m3(-1000.0), 0xfe);
        // 1 + 1/16 is halfway between 1 and 1.125: to the even mantissa (1).
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.1875), 0x3a); // between 1.125 and 1.25: to 1.25
        assert_eq!(f32_to_e4m3(1.0 / 1024.0), 0); // half the smallest subnormal: to 0
        assert_eq!(f32_to_e4m3(3.0 / 1024.0), 2); // 1.5 subnormal steps: to 2
    }
}
