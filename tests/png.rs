//! The report's PNG encoder: checksums against their standard check values, and a file
//! whose structure a PNG reader accepts (signature, chunk lengths and CRCs, stored deflate).

use btx::recipe::png::{Canvas, adler32, crc32};

#[test]
fn checksums_match_their_reference_values() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
}

#[test]
fn png_chunks_are_well_formed_and_hold_the_pixels() {
    let mut canvas = Canvas::new(300, 250, [255, 255, 255]);
    canvas.fill_rect(10, 10, 5, 5, [1, 2, 3]);
    let png = canvas.to_png();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (mut at, mut kinds, mut idat) = (8, Vec::new(), Vec::new());
    while at < png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
        assert_eq!(crc, crc32(&png[at + 4..at + 8 + len]), "bad CRC in {:?}", std::str::from_utf8(kind));
        if kind == b"IDAT" {
            idat.extend_from_slice(&png[at + 8..at + 8 + len]);
        }
        kinds.push(String::from_utf8(kind.to_vec()).unwrap());
        at += 12 + len;
    }
    assert_eq!(kinds, ["IHDR", "IDAT", "IEND"]);
    // Inflate the stored blocks by hand: header, then (final, len, !len, bytes) blocks.
    let mut raw = Vec::new();
    let mut p = 2;
    loop {
        let last = idat[p] & 1 == 1;
        let len = u16::from_le_bytes([idat[p + 1], idat[p + 2]]) as usize;
        assert_eq!(!u16::from_le_bytes([idat[p + 3], idat[p + 4]]) as usize, len);
        raw.extend_from_slice(&idat[p + 5..p + 5 + len]);
        p += 5 + len;
        if last {
            break;
        }
    }
    assert_eq!(u32::from_be_bytes(idat[p..p + 4].try_into().unwrap()), adler32(&raw));
    assert_eq!(raw.len(), 250 * (1 + 300 * 3));
    let row = 12 * (1 + 300 * 3);
    assert_eq!(&raw[row + 1 + 12 * 3..row + 1 + 13 * 3], &[1, 2, 3]);
    assert_eq!(&raw[row + 1..row + 4], &[255, 255, 255]);
}
