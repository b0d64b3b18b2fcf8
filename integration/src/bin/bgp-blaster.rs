//! A minimal BGP load generator and sink for benchmarks, built on serval-bgp's codec.
//!
//! `bgp-blaster feed ...` connects, exchanges OPENs and sends N IPv4 prefixes (packed by
//! attribute set; `--profile shared|sets1000|realistic`, `--offset`, `--source`) then
//! End-of-RIB; `bgp-blaster sink ...` accepts one session and prints
//! `COMPLETE <unix-ms>` once it holds N distinct prefixes. Both keep the session alive
//! until killed. `bgp-blaster stall ...` is a peer that stops reading: it connects with a
//! tiny receive buffer, exchanges OPENs, then only sends KEEPALIVEs and prints
//! `CLOSED <unix-ms>` when the speaker ends the session.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use serval_bgp::af::Family;
use serval_bgp::packet::attribute::{DecodeContext, EncodeContext};
use serval_bgp::packet::capability::Capability;
use serval_bgp::packet::message::{
    HEADER_LEN, Message, Open, Update, decode_header, pack_announcements,
};
use serval_integration::bench_table::{self, Profile};

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
}

fn arg(args: &[String], name: &str) -> String {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].clone())
        .unwrap_or_else(|| panic!("missing {name}"))
}

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

/// A TCP connection to `peer`, from `source` when given.
fn connect_from(peer: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(peer),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(ip) = source {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    sock.connect(&peer.into())?;
    Ok(sock.into())
}

fn read_msg(s: &mut TcpStream, ctx: DecodeContext) -> std::io::Result<Message> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head)?;
    let (_, len) = decode_header(&head, false).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut msg = head.to_vec();
    msg.resize(len, 0);
    s.read_exact(&mut msg[HEADER_LEN..])?;
    Message::decode(&msg, ctx).map_err(|e| std::io::Error::other(e.to_string()))
}

fn handshake(s: &mut TcpStream, asn: u32, id: Ipv4Addr) -> std::io::Result<()> {
    let open = Open {
        my_as: u16::try_from(asn).unwrap_or(23456),
        hold_time: 240,
        router_id: id,
        capabilities: vec![
            Capability::multiprotocol(Family::Ipv4Unicast),
            Capability::FourOctetAs(asn),
        ],
    };
    s.write_all(&Message::Open(open).encode(EncodeContext {
        four_octet_as: true,
        extended_messages: false,
    }))?;
    let ctx = DecodeContext {
        four_octet_as: true,
        ebgp: true,
        extended_messages: false,
    };
    loop {
        match read_msg(s, ctx)? {
            Message::Open(_) => s.write_all(&Message::Keepalive.encode(EncodeContext {
                four_octet_as: true,
                extended_messages: false,
            }))?,
            Message::Keepalive => return Ok(()),
            Message::Notification(n) => {
                return Err(std::io::Error::other(format!(
                    "NOTIFICATION {}/{}",
                    n.code, n.subcode
                )));
            }
            _ => {}
        }
    }
}

fn keepalives(mut s: TcpStream) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(30));
            if s.write_all(&Message::Keepalive.encode(EncodeContext {
                four_octet_as: true,
                extended_messages: false,
            }))
            .is_err()
            {
                return;
            }
        }
    });
}

fn feed(args: &[String]) -> std::io::Result<()> {
    let peer: SocketAddr = arg(args, "--peer").parse().expect("--peer ADDR:PORT");
    let asn: u32 = arg(args, "--as").parse().expect("--as");
    let id: Ipv4Addr = arg(args, "--id").parse().expect("--id");
    let count: u32 = arg(args, "--count").parse().expect("--count");
    let nh: Ipv4Addr = arg(args, "--next-hop").parse().expect("--next-hop");
    // `--ibgp`: a client of a reflector, so no own AS in the path and a LOCAL_PREF.
    let ibgp = args.iter().any(|a| a == "--ibgp");
    // `--rounds N`: send the table N times, each round with other communities (churn).
    let rounds: u32 = opt(args, "--rounds").map_or(1, |v| v.parse().expect("--rounds N"));
    // `--profile`: the table's shape (see `bench_table`); `--offset N`: start at the N-th
    // prefix, so several feeders announce disjoint tables.
    let profile: Profile = opt(args, "--profile")
        .map_or(Ok(Profile::Sets1000), |v| v.parse())
        .expect("--profile");
    let offset: u32 = opt(args, "--offset").map_or(0, |v| v.parse().expect("--offset N"));
    let source: Option<IpAddr> = opt(args, "--source").map(|v| v.parse().expect("--source IP"));
    // Pre-encode everything so the measurement is the receiver's speed, not ours.
    let table = bench_table::table(profile, count, offset, asn, ibgp, nh);
    let mut msgs = Vec::new();
    for round in 0..rounds {
        for (attrs, prefixes) in &table {
            let mut attrs = attrs.clone();
            if round > 0 {
                attrs.communities.push(0xfff0_0000 | round);
            }
            pack_announcements(
                &attrs,
                prefixes,
                EncodeContext {
                    four_octet_as: true,
                    extended_messages: false,
                },
                &mut msgs,
            );
        }
    }
    msgs.push(
        Message::Update(Update::end_of_rib_marker(Family::Ipv4Unicast)).encode(EncodeContext {
            four_octet_as: true,
            extended_messages: false,
        }),
    );
    let mut s = loop {
        match connect_from(peer, source) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    handshake(&mut s, asn, id)?;
    let start = now_ms();
    println!("START {start}");
    let mut reader = s.try_clone()?;
    std::thread::spawn(move || {
        while read_msg(
            &mut reader,
            DecodeContext {
                four_octet_as: true,
                ebgp: true,
                extended_messages: false,
            },
        )
        .is_ok()
        {}
    });
    let mut w = std::io::BufWriter::with_capacity(1 << 20, s.try_clone()?);
    for m in &msgs {
        w.write_all(m)?;
    }
    w.flush()?;
    println!("SENT {} messages in {} ms", msgs.len(), now_ms() - start);
    keepalives(s);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn sink(args: &[String]) -> std::io::Result<()> {
    let listen: SocketAddr = arg(args, "--listen").parse().expect("--listen ADDR:PORT");
    let asn: u32 = arg(args, "--as").parse().expect("--as");
    let id: Ipv4Addr = arg(args, "--id").parse().expect("--id");
    let count: usize = arg(args, "--count").parse().expect("--count");
    let l = TcpListener::bind(listen)?;
    let (mut s, _) = l.accept()?;
    handshake(&mut s, asn, id)?;
    println!("ESTABLISHED {}", now_ms());
    keepalives(s.try_clone()?);
    let mut have: HashSet<Ipv4Net> = HashSet::with_capacity(count);
    let mut done = false;
    let mut r = std::io::BufReader::with_capacity(1 << 20, s);
    loop {
        let mut head = [0u8; HEADER_LEN];
        r.read_exact(&mut head)?;
        let (_, len) =
            decode_header(&head, false).map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut msg = head.to_vec();
        msg.resize(len, 0);
        r.read_exact(&mut msg[HEADER_LEN..])?;
        if let Ok(Message::Update(u)) = Message::decode(
            &msg,
            DecodeContext {
                four_octet_as: true,
                ebgp: true,
                extended_messages: false,
            },
        ) {
            u.withdrawn.iter().for_each(|p| {
                have.remove(p);
            });
            have.extend(u.nlri);
            if !done && have.len() >= count {
                done = true;
                println!("COMPLETE {}", now_ms());
            }
        }
    }
}

fn stall(args: &[String]) -> std::io::Result<()> {
    let peer: SocketAddr = arg(args, "--peer").parse().expect("--peer ADDR:PORT");
    let asn: u32 = arg(args, "--as").parse().expect("--as");
    let id: Ipv4Addr = arg(args, "--id").parse().expect("--id");
    let source: Option<IpAddr> = args
        .windows(2)
        .find(|w| w[0] == "--source")
        .map(|w| w[1].parse().expect("--source IP"));
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(peer),
        socket2::Type::STREAM,
        None,
    )?;
    // A small window so the speaker's data piles up on its side, not in our kernel.
    sock.set_recv_buffer_size(4096)?;
    if let Some(ip) = source {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    sock.connect(&peer.into())?;
    let mut s: TcpStream = sock.into();
    handshake(&mut s, asn, id)?;
    println!("ESTABLISHED {}", now_ms());
    let ka = Message::Keepalive.encode(EncodeContext {
        four_octet_as: true,
        extended_messages: false,
    });
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if s.write_all(&ka).is_err() {
            println!("CLOSED {}", now_ms());
            return Ok(());
        }
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("feed") => feed(&args),
        Some("sink") => sink(&args),
        Some("stall") => stall(&args),
        _ => {
            eprintln!(
                "usage: bgp-blaster feed --peer ADDR:PORT --as N --id IP --count N --next-hop IP [--ibgp] [--rounds N] [--profile shared|sets1000|realistic] [--offset N] [--source IP]\n       bgp-blaster sink --listen ADDR:PORT --as N --id IP --count N\n       bgp-blaster stall --peer ADDR:PORT --as N --id IP [--source IP]"
            );
            std::process::exit(2)
        }
    }
}
