import { Explorer } from "@/components/Explorer";

export default function Home() {
  return <Explorer />;
}
