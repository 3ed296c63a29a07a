from modinspect.launch import main

main()
