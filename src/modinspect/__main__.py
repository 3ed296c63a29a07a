from modinspect.cli.launch import main

main()
